# frozen_string_literal: true

# Exclusion: one holder at a time per id, across threads and (where the
# backend allows) processes; distinct ids do not exclude each other.
RSpec.shared_examples "contract: exclusion" do
  describe "exclusion" do
    it "lets one of 8 threads in at a time: a non-atomic counter (8 x 25 rounds) stays exact and no two sections overlap" do
      threads = 8
      rounds = 25
      counter = 0
      intervals = Queue.new
      workers = Array.new(threads) do
        Thread.new do
          rounds.times do |r|
            MegaMutex.with_distributed_mutex("counter", timeout: 60) do
              entered = clock_ns
              n = counter
              r.even? ? Thread.pass : sleep(0.0001) # let the others barge in between the read and the write
              counter = n + 1
              intervals << [entered, clock_ns]
            end
          end
        end
      end
      workers.each { |w| value_of(w, within: 120) }

      expect(counter).to eq(threads * rounds)
      recorded = Array.new(intervals.size) { intervals.pop }
      expect(recorded.size).to eq(threads * rounds)
      expect(overlapping(recorded)).to eq([])
      expect(MegaMutex.get_current_lock("counter")).to be_nil
    end

    it "lets one of 4 processes in at a time: a counter in a file (4 x 15 rounds) stays exact and no two sections overlap" do
      skip "#{backend} locks are not shared between processes" unless backend.processes?

      processes = 4
      rounds = 15
      Dir.mktmpdir("mm-contract") do |dir|
        path = File.join(dir, "counter")
        File.write(path, "0")
        go_reader, go_writer = IO.pipe
        children = Array.new(processes) do
          fork_child do
            go_writer.close
            go_reader.sysread(1) # all start together
            Array.new(rounds) do |r|
              MegaMutex.with_distributed_mutex("counter", timeout: 60) do
                entered = clock_ns
                n = Integer(File.read(path))
                sleep 0.0005 if r.odd?
                File.write(path, (n + 1).to_s)
                [entered, clock_ns]
              end
            end
          end
        end
        go_reader.close
        go_writer.write("x" * processes)
        go_writer.close
        recorded = children.flat_map { |pid, reader| child_value(pid, reader, within: 120) }

        expect(Integer(File.read(path))).to eq(processes * rounds)
        expect(recorded.size).to eq(processes * rounds)
        expect(overlapping(recorded)).to eq([])
      end
      expect(MegaMutex.get_current_lock("counter")).to be_nil
    end

    it "makes a thread wait while another holds the id, and hands it over at release" do
      holder = hold_elsewhere("handover")
      expect(Thread.new { MegaMutex::Lock.new("handover").try_lock }.value).to be(false)
      waiter = Thread.new { MegaMutex.with_distributed_mutex("handover", timeout: 30) { MegaMutex.get_current_lock("handover") } }
      wait_for(message: "the waiter to wait") { waiter.status == "sleep" }
      expect(MegaMutex.get_current_lock("handover")).to eq(holder.token)
      holder.release
      taken_as = value_of(waiter, within: 30)
      expect(taken_as).to be_a(String)
      expect(taken_as).not_to eq(holder.token)
      expect(MegaMutex.get_current_lock("handover")).to be_nil
    end

    it "does not make distinct ids exclude each other: 4 threads on 4 ids are all inside at once" do
      ids = %w[distinct-a distinct-b distinct-c distinct-d]
      inside = Queue.new
      leave = Queue.new
      workers = ids.map do |id|
        Thread.new do
          MegaMutex.with_distributed_mutex(id, timeout: 5) do
            inside << id
            leave.pop
            MegaMutex.get_current_lock(id)
          end
        end
      end
      # Each thread leaves only once all four are inside: impossible unless
      # the four locks are held at the same time.
      begin
        wait_for(within: 10, message: "all four threads inside") { inside.size == ids.size || workers.none?(&:alive?) }
        expect(inside.size).to eq(ids.size)
      ensure
        ids.size.times { leave << :go }
      end
      tokens = workers.map { |w| value_of(w) }
      expect(tokens.compact.uniq.size).to eq(ids.size)
      ids.each { |id| expect(MegaMutex.get_current_lock(id)).to be_nil }
    end
  end
end
