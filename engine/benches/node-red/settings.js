// Node-RED for the comparison: no editor, warnings only, flows from this directory.
module.exports = {
    uiPort: parseInt(process.env.PORT, 10),
    uiHost: "127.0.0.1",
    httpAdminRoot: false,
    flowFile: process.env.FLOWS,
    userDir: process.env.USERDIR,
    logging: { console: { level: "warn", metrics: false, audit: false } },
};
