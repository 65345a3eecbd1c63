"""Pure verification core: bytes, trust store and `now` in; verified objects or typed errors out."""
