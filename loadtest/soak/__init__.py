"""Soak test (issue #10): ``make run`` for an hour at a steady paced rate, with resends
and one ``kill -9`` of every process, counting every message exactly once.

``python -m loadtest.soak --minutes 60 --rate 50 --results /tmp/soak.json``

What it does:

1. starts the stack exactly as ``make run`` does (``python -m scripts.run``:
   every process under supervisord, which restarts whatever dies), on free
   loopback ports in a temporary data directory (``--data-dir`` keeps it);
2. signs up ``--clients`` users through HAProxy (each with device 1, its
   identity and an account key whose signed device list names it), in pairs:
   each user sends to its partner, so every user is a sender and a recipient;
3. for ``--minutes``, one open-loop scheduler composes ``--rate`` messages per
   second in total, round-robin over the users, whatever happens to the
   stack. A message is a protocol-v2 ``send`` whose body (base64url, like
   ciphertext) carries the sender, its number and the time it was composed.
   A user whose socket is down keeps what it composes and sends it, in order,
   once it is connected again; anything not ``accepted`` within
   ``--retry-after`` seconds, or answered with an ``error``, is sent again
   with the same id, as docs/protocol.md ("Reconnecting") says;
4. every ``--resend-every`` seconds one user (round-robin) drops its socket
   on purpose, reconnects, syncs, and sends its last ``--resend-count``
   *accepted* messages again with the same ids: the server must store none of
   them twice;
5. ``kill -9`` of each process of ``make run`` once (``--kills``: every
   service, every embedded server, HAProxy), spread evenly over the run; each
   must come back under supervisord and every service must answer ``/readyz``
   through HAProxy again (the time it took is reported);
6. recipients behave as a client should: they take pushes, drop a ``seq``
   they already have, acknowledge the highest ``seq`` they hold every
   ``--ack-interval`` seconds (never while paging), page through their inbox
   with ``sync`` after every (re)connect and after ``resync``, and refresh
   their access token (15 minutes) with the refresh token, re-authenticating
   the open socket;
7. at the end: everything not yet accepted is sent until it is; then the run
   waits for every accepted message, and each recipient pages through its
   inbox one last time.

Reported per ``--window-minutes`` (10) window: messages composed, accepted
and delivered (of those composed in the window), the accept → delivery
latency (sender's ``accepted`` to the recipient's ``message``, one clock)
p50/p99/max and the compose → delivery p99, the kills, and each process's
CPU (utime + stime from /proc, pids from supervisord, a restarted process
counted from its start) per message delivered in the window. Totals: lost
(accepted, never delivered; must be 0), duplicates (one message id stored
under two sequence numbers and two server ids: a client that drops a server
id it has would show it twice; must be 0), copies stored again under the same
server id (after Redis lost the hot inbox, docs/delivery.md "Duplicates";
clients drop them; counted), repeats of one ``seq`` (allowed by the
protocol, counted), resends, reconnects, errors by code. The exit status
is 1 if anything was lost or duplicated, or still not accepted after the
drain (a stalled client), 2 if the harness itself failed.

docs/BENCHMARKS.md ("Soak (issue #10)") has the figures and the command.
"""
