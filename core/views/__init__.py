"""Views: what the pages show, built from the stages (pages import views; views never import pages or Streamlit).

data (uploads, overview, token view) · map (2-D layouts and the scatter) · graph (the pyvis neighbourhood, hubness) ·
walk (replaying a stored walk) · compare (overlap and composition figures) · evaluate (evaluation choices,
held-out loss and training-curve figures, results table, adapter zips, run captions) · text (Markdown escaping)
"""
