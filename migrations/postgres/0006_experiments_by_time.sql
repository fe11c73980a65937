-- The experiment list is read newest first, a page at a time.
CREATE INDEX experiments_by_time ON experiments (created_at DESC, id);
