"""The fleet: one incident declaration reaches every concerned host through NATS JetStream.

Map (docs/fleet.md for users; /work/shared/fleet.md for the research and design):

    keys       buckets, keys, subjects; the token encoding of incident IDs and host names
    records    incident, status and host records: dataclasses with strict parsers
    conn       settings from the fleet.* keys, connect (TLS, nkeys, reconnect for ever with
               jitter), open or create the buckets
    enroll     per-principal nkeys and NATS permissions (host, relay, commander)
    incidents  writing incident records: declare, resolve, recapture (compare-and-set)
    local      a host's fleet state file and its coalescing status writer
    watcher    the daemon's fleet mode: heartbeat, watch, decide, capture, report
    overview   the commander's view: expected hosts, states, latencies (pure), host mirror
    commander  the commander's operations (status, follow, trigger, resolve, ...)
    render     text for the commander
    relay      `goldenhour relay`: webhooks verified centrally become incident records

Nothing here imports the capture pipeline; the daemon wires the watcher to its job runner in
``agent.daemon.fleet``.
"""
import logging

# log records of this package reach the daemon's or relay's handlers; a CLI process that set up
# none reports errors as one-line messages instead, not as stray stderr lines
logging.getLogger("goldenhour.fleet").addHandler(logging.NullHandler())
