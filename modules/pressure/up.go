package pressure

// Up returns the status code and JSON body for /up: the monitor's latest
// readings. manage serves /up through it.
//
// NOT YET IMPLEMENTED: reports healthy with no readings.
func Up() (status int, body any) {
	return 200, map[string]any{"status": "ok", "healthy": true}
}

// UnderPressure reports whether a threshold is exceeded now, and which
// type ("heapUsed", "rssBytes", "eventLoopDelay", ...); /health reports it.
//
// NOT YET IMPLEMENTED: always false.
func UnderPressure() (bool, string) { return false, "" }
