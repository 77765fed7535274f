/** The log files `openshell-vm logs --source` reads. */
export const LOG_SOURCES = ['console', 'gvproxy', 'virtiofsd', 'vmm', 'supervisor', 'output'] as const;
export type LogSource = (typeof LOG_SOURCES)[number];
