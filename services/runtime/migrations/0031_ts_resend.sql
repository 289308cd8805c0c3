-- TS gateway: a Rejected instance may be sent again (right credentials, a file TS discarded). Its
-- rejected parts go back to 'pending'; the protocollo TS gave the discarded file, if any, moves to
-- earlier_protocolli, so a crash during the resend can never adopt the old, discarded send as the
-- new one (known_protocolli reads both).
ALTER TABLE ts_submission_part ADD COLUMN earlier_protocolli text[] NOT NULL DEFAULT '{}';
