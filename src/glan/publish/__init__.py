"""What leaves a run: the exported dataset and the HTML report."""
