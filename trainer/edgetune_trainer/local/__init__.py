"""`edgetune run`: a whole FineTuneJob on one machine, with the cluster's trainer and exporter: choosing
storage, a local Ray, the display, the run's history and curves, and the summary."""
