"""peerlink rendezvous: STUN server, peer registry, introductions and relay."""
