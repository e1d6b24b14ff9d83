-- The four tables of the backend dbjobs grew out of, as its default jobs expect them.
CREATE TABLE refresh_tokens (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), expires_at timestamptz NOT NULL);
CREATE TABLE email_verifications (
    id bigserial PRIMARY KEY, expires_at timestamptz NOT NULL, verified_at timestamptz);
CREATE TABLE password_resets (id bigserial PRIMARY KEY, expires_at timestamptz NOT NULL, used_at timestamptz);
CREATE TABLE login_attempts (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL);
-- The cleanup compares each expiry column with a cutoff: an index on each lets it
-- find expired rows without reading the whole table (`dbjobs doctor` checks).
CREATE INDEX ON refresh_tokens (expires_at);
CREATE INDEX ON email_verifications (expires_at);
CREATE INDEX ON email_verifications (verified_at);
CREATE INDEX ON password_resets (expires_at);
CREATE INDEX ON password_resets (used_at);
CREATE INDEX ON login_attempts (created_at);
