-- The shared todo list's table (the recipe's README creates it, then `electricctl apply`).
CREATE TABLE todos (
    id uuid PRIMARY KEY,
    list_id text NOT NULL,
    title text NOT NULL,
    done boolean NOT NULL,
    created_at timestamptz NOT NULL
);
