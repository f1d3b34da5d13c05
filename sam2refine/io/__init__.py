"""Files in and out: segmentations, DICOM-SEG, terminology, atomic writes, torch files."""
