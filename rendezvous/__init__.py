"""peerlink rendezvous: STUN server, peer registry, introductions and relay.

The package owns the wire protocol (docs/PROTOCOL.md) on both sides:

- pure: ``stun`` (the codec), ``legacy`` (the plain-text codec), ``core``
  (the server's protocol logic) with ``events``, ``directory``, ``tokens``,
  ``ratelimit``, ``transactions`` and ``legacy_handling``; and
  ``client_protocol``, the client's half, shared by ``client`` and the webpeer;
- adapters: ``udp`` and ``mmsg`` (sockets), ``server`` (asyncio), ``client``;
- the registry: ``registry`` (interface), ``sqlite_registry``, ``sqlite_file``;
- command lines: ``cli`` (the server), ``tool`` (a client by hand).
"""
