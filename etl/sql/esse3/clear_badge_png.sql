-- Erasure with write_back_qr_png = true: the QR image esc-sync wrote on the badge, taken back first.
UPDATE "P01_BADGE" SET "ESC_QR_PNG" = NULL WHERE "BDG_ID" = :bdg_id AND "ESC_ESCN" = :escn
