"""The stateful proxy: transaction glue (``core``), the routing script
(``routing``) and the timer queue (``timers``)."""
