"""Demo helpers: the procedural ``shapes`` dataset and its analyzer."""
