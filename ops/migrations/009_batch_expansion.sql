-- 009_batch_expansion: a bulk send is expanded in steps. The API writes the
-- batch (with what every row needs: the send document without its bodies,
-- the segment's rule as it was, the step size) and the first step in one
-- transaction; the tenant actor writes the next steps, each in its own
-- transaction together with the cursor, so a step is written whole or not
-- at all and a crash resumes after the last committed step. Members are
-- walked in (created_at, id) order, the contacts_org_created index.
ALTER TABLE batches
    ADD COLUMN status text NOT NULL DEFAULT 'expanded' CHECK (status IN ('expanding', 'expanded')),
    ADD COLUMN send_id uuid,
    ADD COLUMN doc jsonb,
    ADD COLUMN rule text,
    ADD COLUMN expand_chunk int NOT NULL DEFAULT 5000 CHECK (expand_chunk > 0),
    ADD COLUMN expand_at timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN expand_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000',
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
-- The sweeper re-announces expansions that stopped moving.
CREATE INDEX batches_expanding ON batches (updated_at) WHERE status = 'expanding';
