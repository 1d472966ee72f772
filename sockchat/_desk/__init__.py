"""The desk: operators answer clients from a browser (issue 25).

- ``accounts``: the accounts file and its scrypt hashes;
- ``sessions``: who is logged in, and for how long;
- ``throttle``: how fast wrong passwords may be tried;
- ``queue``: what the desk needs from the operators' queue (``IDeskQueue``),
  and ``brokered``, that queue at the broker (in memory in one process, on
  Redis across instances);
- ``model``: what each operator sees, holds and may do, with no I/O;
- ``canned``: canned answers, chosen with a short keyword;
- ``door``: the desk's web door (pages, API, WebSocket), thin over the rest.
"""
