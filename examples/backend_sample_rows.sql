-- Sample rows on both sides of every default job's retention line, with a margin
-- of minutes so that the clock moving cannot change which side a row is on.
-- The tests assert exactly: refresh_tokens 2 deleted, email_verifications 3,
-- password_resets 2, login_attempts 2.
INSERT INTO refresh_tokens (expires_at) VALUES
    (now() - interval '31 days'), (now() - interval '30 days 5 minutes'),   -- deleted
    (now() - interval '29 days 23 hours'), (now() - interval '1 day'), (now() + interval '1 day');
INSERT INTO email_verifications (expires_at, verified_at) VALUES
    (now() - interval '25 hours', NULL),                     -- deleted: expired
    (now() + interval '1 hour', now() - interval '25 hours'), -- deleted: verified long ago
    (now() - interval '25 hours', now() - interval '1 hour'),  -- deleted: the earliest counts
    (now() - interval '23 hours', NULL),
    (now() + interval '1 hour', now() - interval '23 hours'),
    (now() + interval '1 hour', NULL);
INSERT INTO password_resets (expires_at, used_at) VALUES
    (now() - interval '70 minutes', NULL),                      -- deleted
    (now() + interval '1 hour', now() - interval '65 minutes'),  -- deleted: used
    (now() - interval '50 minutes', NULL),
    (now() + interval '10 minutes', now() - interval '55 minutes');
INSERT INTO login_attempts (created_at) VALUES
    (now() - interval '8 days'), (now() - interval '7 days 10 minutes'),    -- deleted
    (now() - interval '6 days 23 hours'), (now());
