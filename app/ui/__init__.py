"""The web pages under /ui/ (issue 15) and who may open them."""
