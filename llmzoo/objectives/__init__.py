"""Training objectives: losses handed to the train step, and the examples they train on."""
