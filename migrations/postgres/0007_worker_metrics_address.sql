-- Where Prometheus reaches each worker's own metrics (`HOST:PORT`, the worker's
-- --metrics-address), listed by GET /v1/prometheus/targets while the worker is live. NULL for
-- workers that serve no metrics or registered before this migration.
ALTER TABLE workers ADD COLUMN metrics_address TEXT;
