-- Every badge that carries an ESCN in Esse3, and whether it carries the QR image too (`esc-sync
-- status` compares them with the cards esc-sync registered: a badge carrying another ESCN is not
-- esc-sync's). A site adapts the column names here as in badge_cards.sql.
SELECT "BDG_ID", "ESC_ESCN", CASE WHEN "ESC_QR_PNG" IS NULL THEN 0 ELSE 1 END AS "HAS_PNG"
FROM "P01_BADGE" WHERE "ESC_ESCN" IS NOT NULL
