-- The demo schema used by `electricctl demo` and the README: a small issue tracker.
-- Electrified tables use globally unique ids (uuid) and only supported column types.
CREATE TABLE IF NOT EXISTS public.users (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    email text
);

CREATE TABLE IF NOT EXISTS public.projects (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    owner_id uuid NOT NULL REFERENCES public.users (id),
    created_at timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS public.memberships (
    id uuid PRIMARY KEY,
    project_id uuid NOT NULL REFERENCES public.projects (id),
    user_id uuid NOT NULL REFERENCES public.users (id),
    active boolean NOT NULL
);

CREATE TABLE IF NOT EXISTS public.admins (
    user_id uuid PRIMARY KEY REFERENCES public.users (id)
);

CREATE TABLE IF NOT EXISTS public.issues (
    id uuid PRIMARY KEY,
    project_id uuid NOT NULL REFERENCES public.projects (id),
    title text NOT NULL,
    status text NOT NULL,
    priority int4,
    data jsonb
);

CREATE TABLE IF NOT EXISTS public.comments (
    id uuid PRIMARY KEY,
    issue_id uuid NOT NULL REFERENCES public.issues (id),
    author_id uuid NOT NULL REFERENCES public.users (id),
    body text NOT NULL,
    created_at timestamptz NOT NULL
);

-- A table that is not electrified: electricctl leaves it alone.
CREATE TABLE IF NOT EXISTS public.audit_log (
    id bigserial PRIMARY KEY,
    message text
);
