// What a NodeManager without Hadoop's native library pays per file when it
// sets the permissions of a localised archive: RawLocalFileSystem.setPermission
// starts one `chmod` process per file and directory. Times N such processes
// from a JVM on files in a temporary directory and prints the cost per file.
//
//   java bench/ChmodCost.java [N]      (N = 2000 by default)
import java.nio.file.Files;
import java.nio.file.Path;

public class ChmodCost {
  public static void main(String[] args) throws Exception {
    int n = args.length > 0 ? Integer.parseInt(args[0]) : 2000;
    Path dir = Files.createTempDirectory("chmod-cost");
    try {
      for (int i = 0; i < n; i++) Files.createFile(dir.resolve("f" + i));
      long started = System.nanoTime();
      for (int i = 0; i < n; i++) {
        Process p = new ProcessBuilder("chmod", "0555", dir.resolve("f" + i).toString()).start();
        if (p.waitFor() != 0) throw new IllegalStateException("chmod failed");
      }
      double perFile = (System.nanoTime() - started) / 1e6 / n;
      System.out.printf("%d chmod processes: %.2f ms each; 42,000 files would take %.0f s%n", n, perFile, perFile * 42_000 / 1000);
    } finally {
      for (int i = 0; i < n; i++) Files.deleteIfExists(dir.resolve("f" + i));
      Files.delete(dir);
    }
  }
}
