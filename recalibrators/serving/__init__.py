"""The ranker side: the Redis key contract and the map reader (the only part of recalibrators that imports redis)."""
