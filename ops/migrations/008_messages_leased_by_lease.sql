-- 008_messages_leased_by_lease: the same rows as 007's index (only a row
-- being sent has a lease: every way out of 'sending' clears lease_until),
-- but keyed on the lease itself. With the predicate status = 'sending' the
-- planner also chose this index for the recorder's outcome round (which
-- names its rows by id AND status = 'sending'): a bitmap scan of every
-- entry, dead ones included (tens of thousands during a bulk send), to
-- update twenty rows. The sweeper's lease_until < now() still implies
-- this predicate; the recorder's condition does not, so it walks the
-- primary key.
DROP INDEX IF EXISTS messages_leased;
CREATE INDEX messages_leased ON messages (lease_until) WHERE lease_until IS NOT NULL;
