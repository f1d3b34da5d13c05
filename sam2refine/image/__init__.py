"""Image volumes with their patient geometry, their slices, and intensity windows."""
