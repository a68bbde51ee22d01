"""The coordinator of a deployment: the round port over the engine with a database and a
blob store under it (``persistent.py``), the journal that writes every change before it
takes effect (``journal.py``), membership (``membership.py``: invites, enrollment, signed
requests, revocation), the nonces of signed requests (``nonces.py``) and the store check
(``recompute.py``). The I/O around the pure engine: nothing in ``zenfed.coordinator``
touches a database or a file.
"""
