"""Cost ledger, prices and budgets. Built in the costs issue; see docs/architecture.md."""
