// What the local NodeManager pays per file to set the permissions of a
// localised archive, through Hadoop's own code path (FileContext's local file
// system, as FSDownload calls it): times setPermission on N files with
// IMPL as fs.AbstractFileSystem.file.impl ("-": Hadoop's LocalFs, which
// without the native library starts a chmod process per file;
// aibatch.hadoop.NioLocalFs: java.nio). Run by bench/bench_chmod.py with the
// Hadoop home's jars and infra/java's compiled classes on the classpath.
//
//   java -cp CLASSES:JARS/* bench/SetPermissionCost.java IMPL [N]
import java.nio.file.Files;
import java.nio.file.attribute.PosixFilePermissions;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileContext;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.permission.FsPermission;

public class SetPermissionCost {
  public static void main(String[] args) throws Exception {
    String impl = args[0];
    int n = args.length > 1 ? Integer.parseInt(args[1]) : 2000;
    Configuration conf = new Configuration();
    if (!impl.equals("-")) conf.set("fs.AbstractFileSystem.file.impl", impl);
    FileContext fc = FileContext.getLocalFSFileContext(conf);
    java.nio.file.Path dir = Files.createTempDirectory("set-permission-cost");
    try {
      for (int i = 0; i < n; i++) Files.createFile(dir.resolve("f" + i));
      FsPermission mode = new FsPermission((short) 0555);
      long started = System.nanoTime();
      for (int i = 0; i < n; i++) fc.setPermission(new Path(dir.resolve("f" + i).toString()), mode);
      double perFile = (System.nanoTime() - started) / 1e6 / n;
      for (int i = 0; i < n; i++) {
        String got = PosixFilePermissions.toString(Files.getPosixFilePermissions(dir.resolve("f" + i)));
        if (!got.equals("r-xr-xr-x")) {
          throw new IllegalStateException("f" + i + " is " + got + ", not r-xr-xr-x");
        }
      }
      System.out.printf("%s: %d files, %.4f ms each%n", fc.getDefaultFileSystem().getClass().getName(), n, perFile);
    } finally {
      for (int i = 0; i < n; i++) Files.deleteIfExists(dir.resolve("f" + i));
      Files.delete(dir);
    }
  }
}
