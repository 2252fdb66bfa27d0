"""Object storage: one job's area on an S3-compatible endpoint or in a folder, with retries that ride out
an outage (`job.JobStorage`), and the embedded S3 server `edgetune run` starts when nothing else is given.
Below the model, training and export; it knows nothing about models."""
