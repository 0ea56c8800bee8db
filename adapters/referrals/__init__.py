"""Referrals and registers in: GP at-risk register CSV, adult social care and voluntary-sector referrals."""
