"""Sphinx configuration of the skellab tutorials site (built by docs/build.sh; see docs/README.md)."""

project = "skellab"
author = "skellab developers"
copyright = "2026, skellab developers"
extensions = [
    "myst_nb",  # notebooks (already executed by docs/build_site.py) and MyST markdown pages
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = "skellab tutorials"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_permalinks_icon = "#"
html_copy_source = False  # the executed notebooks are large (offline 3D views): don't ship them twice
html_show_sourcelink = False
html_show_search_summary = False  # summaries are fetch()ed from each page, which browsers refuse under file://

# Math: MathJax 3 vendored from the npm registry into _static (no CDN), SVG output (no web fonts to fetch).
mathjax_path = "mathjax/tex-svg-full.js"
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# Notebooks are executed before Sphinx runs (papermill, CI or full parameters); never here.
nb_execution_mode = "off"
nb_ipywidgets_js = {}  # no require.js / widget manager from a CDN: live widgets are replaced by a note
nb_merge_streams = True

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_mock_imports = ["polyscope"]
suppress_warnings = ["myst.header", "misc.highlighting_failure", "autodoc", "autodoc.import_object", "ref.python",
                     "toc.not_included", "mystnb.unknown_mime_type"]


def _docstrings_as_written(app, what, name, obj, options, lines):
    """skellab's docstrings are plain text laid out for a terminal (shapes in columns, ``|x|``, arrows), not
    reStructuredText: show them as written, in a literal block, rather than mangled by the RST parser."""
    if lines:
        lines[:] = ["::", ""] + ["    " + line for line in lines] + [""]


def setup(app):
    app.connect("autodoc-process-docstring", _docstrings_as_written)
