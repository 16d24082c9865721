"""peerlink webpeer: one user's peer process (see issue: webpeer)."""
