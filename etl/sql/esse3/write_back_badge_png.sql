-- Optional ([[atenei]] write_back_qr_png = true): the QR image itself, a PNG, on the badge.
UPDATE "P01_BADGE" SET "ESC_QR_PNG" = :png WHERE "BDG_ID" = :bdg_id AND "ESC_ESCN" = :escn
