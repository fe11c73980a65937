-- Each worker proves who it is with the key handed out at registration (stored as its SHA-256,
-- hex): with tokens configured, an attempt's writes are accepted only from the worker that leased
-- it (or a member of its gang). Workers registered before this migration have none and must
-- register again.
ALTER TABLE workers ADD COLUMN key_sha256 TEXT;
