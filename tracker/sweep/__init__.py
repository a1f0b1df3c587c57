"""A sweep: the runner's numbered steps, claims on the run store, the claim loop, the local worker pool, Ray actors, accelerate ranks and the writing stage."""
