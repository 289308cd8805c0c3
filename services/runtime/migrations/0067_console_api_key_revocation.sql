-- API keys of machine clients can be revoked (`flows users api-key-revoke KEY_ID`): `revoked` (0060) is what the
-- API checks on every request; `revoked_at` says since when, for `flows users api-keys`. Who issued and who
-- revoked a key, and when, is in the hash-chained `console-users` stream (console.api-key-added,
-- console.api-key-revoked), written in the same transaction as the change.
ALTER TABLE console_api_key ADD COLUMN revoked_at timestamptz;
