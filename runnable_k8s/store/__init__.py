"""The run store: every change to a run's records in Redis, and every key name, in one place.

Both sides import it (the producer to enqueue, cancel and read; the worker to claim, lease,
finish and rescue); it imports only `runnable_k8s.protocol` and `runnable_k8s.errors`, never
either side. Each state change is one Lua script, kept in `lua/<name>.lua` beside this file and
loaded once per client (`scripts.load`), so a change of state is one round trip and atomic.
Records are signed by the callers (Redis cannot check a signature): a script compares the
exact bytes it expects to replace, never trusts what it reads.

One module per set of records:

- `keys`: every key name (new state names its keys here too);
- `submit`: the producer's enqueue (lua/enqueue.lua);
- `records`: the worker's claim, finish and rejection notice (lua/claim.lua, finish.lua,
  note.lua);
- `leases`: lease renewal and release (lua/renew.lua, release.lua);
- `cancel`: cancellation, by a producer or a worker answering Celery's revoke;
- `rescue`: the sweep that pushes back messages the broker lost (lua/sweep.lua);
- `notices`: the producer's check of a rejection notice (lua/check.lua);
- `dead_letters`: the dead-letter index.

A new kind of state (a thread's queue of runs, priorities, rate-limit counters, webhook
deliveries) is a new module here with its scripts in `lua/`, its keys in `keys`, and, when it
changes what a run's claim or finish must do, an extra key or argument to those scripts
rather than a second round trip.
"""
