"""Planning: resolve -> membership -> diff -> Plan (a frozen value); splits; schedule;
saved plan files."""
