"""biozoo in napari (npe2 plugin, `pip install 'biozoo[napari]'`): a dock widget that runs any bioimage.io package
on layers with biozoo's input checks, and readers for packages and OME-Zarr images. napari and Qt are imported
only by widget.py and by the readers when napari calls them; `import biozoo.runtime` never loads them."""
