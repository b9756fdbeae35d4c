-- Store the card on its badge ("Memorizzazione QRCode sul badge"): the ESCN, the QR's payload
-- (https://s.esc-r.eu/<ESCN>) and the card's status at the ESC Router, so Esse3's own virtual badge
-- and badge printing show them. Idempotent; never overwrites a different ESCN already on the badge,
-- except one esc-sync wrote itself before (previous_escn: a card number re-minted; pending_escn: a
-- write of a run that did not finish).
-- A site adapts the column names here (and in badge_cards.sql); DDL in docs/esse3-badge-write-back.md.
UPDATE "P01_BADGE"
SET "ESC_ESCN" = :escn, "ESC_QR_URL" = :qr_url, "ESC_STATO" = :status
WHERE "BDG_ID" = :bdg_id
  AND ("ESC_ESCN" IS NULL OR "ESC_ESCN" IN (:escn, :previous_escn, :pending_escn))
