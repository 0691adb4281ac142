-- Read-only views used by operators and reports.

CREATE OR REPLACE VIEW views.active_users AS
    SELECT id, username, first_name, last_name, bio, profile_picture_id, grade, location, school, works,
           badges, created_at
    FROM auth.users
    WHERE state = 1;

CREATE OR REPLACE VIEW views.user_stats AS
    SELECT u.id,
           u.username,
           (SELECT count(*) FROM auth.follows f WHERE f.followed_id = u.id AND f.state = 1) AS followers,
           (SELECT count(*) FROM auth.follows f WHERE f.follower_id = u.id AND f.state = 1) AS following,
           (SELECT count(*) FROM content.posts p WHERE p.user_id = u.id) AS posts
    FROM auth.users u;
