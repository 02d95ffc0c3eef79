"""The machine-learning code the tasks share: images and labelled folders, features and their cache, precision,
compiling, training loops, attacks, reports and plots. It knows nothing of jobs, workers or the database."""
