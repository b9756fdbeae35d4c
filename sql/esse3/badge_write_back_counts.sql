-- How many badges carry an ESCN, and a QR image, in Esse3 (the demo's summary).
SELECT COUNT("ESC_ESCN"), COUNT("ESC_QR_PNG") FROM "P01_BADGE"
