"""Released caffemodels: manifest, verified download, demo weights."""
