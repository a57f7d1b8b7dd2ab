"""Which file names count as images: raster suffixes for dataset folders, more for prediction."""

RASTER_SUFFIXES: frozenset[str] = frozenset({".jpeg", ".jpg", ".png"})  # dataset class folders
DICOM_SUFFIXES: frozenset[str] = frozenset({".dcm", ".dicom"})
PREDICT_SUFFIXES: frozenset[str] = RASTER_SUFFIXES | {".tif", ".tiff"} | DICOM_SUFFIXES
