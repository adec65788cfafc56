"""Cost models arrive with the cost-ledger issue."""
