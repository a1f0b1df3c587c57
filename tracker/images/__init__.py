"""Image files: the PNG recipe chunks, labelled grid images, thumbnails and the check of stored images. Pillow only."""
