-- One submitted form issues at most one API key. The console's "Emetti una chiave API" form carries a random id,
-- made when the page is rendered (services/console/admin_pages.py); the key it issues keeps it here. The same form
-- sent again (a refresh of the answer, which re-sends the POST; a double click) finds its id taken and issues
-- nothing: the page names the key already issued, whose secret was shown once and is never stored (the
-- table keeps only its SHA-256, as before). Keys issued by `flows users api-key`, and those issued before this
-- migration, have none (NULL: never equal to another).
ALTER TABLE console_api_key ADD COLUMN request_id text UNIQUE;
