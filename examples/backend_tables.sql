-- The four tables of the backend dbjobs grew out of, as its default jobs expect them.
CREATE TABLE refresh_tokens (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), expires_at timestamptz NOT NULL);
CREATE TABLE email_verifications (
    id bigserial PRIMARY KEY, expires_at timestamptz NOT NULL, verified_at timestamptz);
CREATE TABLE password_resets (id bigserial PRIMARY KEY, expires_at timestamptz NOT NULL, used_at timestamptz);
CREATE TABLE login_attempts (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL);
